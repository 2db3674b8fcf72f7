"""bench.profile_step's attribution of thunks to parts of the step, on a small HLO dump."""

from bench import profile_step

HLO = '''HloModule jit_last_step, is_scheduled=true

%fused_computation.1 (param_0: f32[3,3,8,8]) -> f32[1,1,1,8] {
  %param_0 = f32[3,3,8,8]{3,2,1,0} parameter(0)
  %multiply.1 = f32[3,3,8,8]{3,2,1,0} multiply(%param_0, %param_0), metadata={op_name="jit(last_step)/mul" stack_frame_id=3}
  ROOT %reduce.1 = f32[1,1,1,8]{3,2,1,0} reduce(%multiply.1), metadata={op_name="jit(last_step)/reduce_sum" stack_frame_id=3}
}

%fused_computation.2 (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %add.2 = f32[8]{0} add(%param_0, %param_0), metadata={op_name="jit(last_step)/add" stack_frame_id=4}
}

ENTRY %main.3 (p0: f32[3,3,8,8], p1: f32[8], x: f32[1,8,8,8]) -> f32[1,1,1,8] {
  %p0 = f32[3,3,8,8]{3,2,1,0} parameter(0)
  %p1 = f32[8]{0} parameter(1)
  %x = f32[1,8,8,8]{3,2,1,0} parameter(2)
  %reduce_fusion.1 = f32[1,1,1,8]{3,2,1,0} fusion(%p0), kind=kInput, calls=%fused_computation.1
  %loop_fusion.2 = f32[8]{0} fusion(%p1), kind=kLoop, calls=%fused_computation.2
  %convolution.3 = f32[1,8,8,8]{3,2,1,0} convolution(%x, %p0), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(last_step)/conv" stack_frame_id=5}
  ROOT %copy.4 = f32[1,1,1,8]{3,2,1,0} copy(%reduce_fusion.1), metadata={op_name="jit(last_step)/copy" stack_frame_id=2}
}

FileNames
1 "/repo/study/engine/step.py"
2 "/repo/study/engine/agc.py"
3 "/site-packages/optax/_src/transform.py"
4 "/repo/study/models/ws_conv.py"
FunctionNames
1 "last_step"
FileLocations
1 {file_name_id=1 function_name_id=1 line=1 end_line=1 column=1 end_column=2}
2 {file_name_id=2 function_name_id=1 line=1 end_line=1 column=1 end_column=2}
3 {file_name_id=3 function_name_id=1 line=1 end_line=1 column=1 end_column=2}
4 {file_name_id=4 function_name_id=1 line=1 end_line=1 column=1 end_column=2}
StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=1 parent_frame_id=1}
3 {file_location_id=2 parent_frame_id=2}
4 {file_location_id=3 parent_frame_id=2}
5 {file_location_id=4 parent_frame_id=2}
'''


def test_thunks_are_attributed_by_the_files_on_their_stack():
    classes = profile_step.hlo_classes(HLO)
    # A fusion is classed by its body: AGC's norm (agc.py under step.py), the optimizer's add.
    assert classes["reduce_fusion.1"] == "agc"
    assert classes["loop_fusion.2"] == "optimizer"
    assert classes["convolution.3"] == "convolution"  # an XLA convolution, whoever calls it
    assert classes["copy.4"] == "step (loss, EMA, metrics)"  # only step.py on its stack


def test_stack_tables_follow_parents():
    stacks = profile_step._tables(HLO)
    assert stacks[3] == {"/repo/study/engine/agc.py", "/repo/study/engine/step.py"}
    assert stacks[1] == {"/repo/study/engine/step.py"}
