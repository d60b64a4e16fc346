# frozen_string_literal: true

require_relative 'test_helper'

# Groups, wait, input and ignore-failure steps (OpsChain.steps, wait_step, input_step, ignore_failure_step,
# step) in step_result.json's child_step_definitions, and a dry run's expected_step_tree.
class BuiltinStepsTest < Minitest::Test
  include RunnerTest

  def children = step_result['child_step_definitions']['children']

  def test_a_group_nests_its_own_strategy_inside_a_steps_list
    write_context
    write('actions.rb', <<~RUBY)
      action :deploy, steps: [
        'prepare',
        OpsChain.steps(['deploy_app_1', 'deploy_app_2'], run_as: :parallel, step_name: 'Deploy apps'),
        OpsChain.steps([:verify, OpsChain.steps(%w[a b], run_as: :parallel)], run_as: :sequential),
      ] do
        puts 'deploying'
      end
      %i[prepare deploy_app_1 deploy_app_2 verify a b].each { |name| action(name) {} }
    RUBY
    result = action('deploy')
    assert result.success?, result.stderr
    assert_equal 'sequential', step_result['child_step_definitions']['child_execution_strategy']
    assert_equal(
      [
        { 'action' => 'prepare' },
        { 'action' => 'opschain_steps_1', 'type' => 'group', 'step_name' => 'Deploy apps', 'child_execution_strategy' => 'parallel',
          'children' => [{ 'action' => 'deploy_app_1' }, { 'action' => 'deploy_app_2' }] },
        { 'action' => 'opschain_steps_3', 'type' => 'group', 'step_name' => 'Sequential children', 'child_execution_strategy' => 'sequential',
          'children' => [{ 'action' => 'verify' },
                         { 'action' => 'opschain_steps_2', 'type' => 'group', 'step_name' => 'Parallel children', 'child_execution_strategy' => 'parallel',
                           'children' => [{ 'action' => 'a' }, { 'action' => 'b' }] }] }
      ],
      children
    )
  end

  def test_wait_steps_plain_timed_named_and_with_their_own_children
    write_context
    write('actions.rb', <<~RUBY)
      action :destroy, steps: [
        :before,
        OpsChain.wait_step,
        OpsChain.wait_step(seconds: 90, step_name: 'Wait for server restart'),
        OpsChain.wait_step(step_name: 'Confirm destroy', steps: ['Shutdown'], ignore_failure: true),
      ]
      action(:before) {}
      action('Shutdown') {}
    RUBY
    result = action('destroy')
    assert result.success?, result.stderr
    assert_equal(
      [
        { 'action' => 'before' },
        { 'action' => 'opschain_wait_step_1', 'type' => 'wait', 'children' => [], 'child_execution_strategy' => 'sequential' },
        { 'action' => 'opschain_wait_step_2', 'type' => 'wait', 'step_name' => 'Wait for server restart', 'wait_seconds' => 90,
          'children' => [], 'child_execution_strategy' => 'sequential' },
        { 'action' => 'opschain_wait_step_3', 'type' => 'wait', 'step_name' => 'Confirm destroy', 'ignore_failure' => true,
          'children' => [{ 'action' => 'Shutdown' }], 'child_execution_strategy' => 'sequential' }
      ],
      children
    )
  end

  def test_input_steps_carry_their_arguments_with_defaults_filled_and_values_converted
    write_context
    write('actions.rb', <<~RUBY)
      action :do_something, steps: [
        OpsChain.input_step(
          step_name: 'Server details',
          input_arguments: [
            :comments,
            server_name: { path: '/database/server', gui_name: 'Server name', description: 'Name of the server to restart' },
            patch_number: { path: '/patches', required: false, type: :integer, default_value: '10', valid_values: ['1', 10, 10.0] },
            restart_after_hours: { type: :boolean, default_value: 'yes' },
            cutover: { type: :date, valid_values: ['2026-06-30'], required: false }
          ],
          steps: ['do_something_with_input']
        )
      ]
      action(:do_something_with_input) {}
    RUBY
    result = action('do_something')
    assert result.success?, result.stderr
    input = children.first
    assert_equal %w[input Server\ details sequential], input.values_at('type', 'step_name', 'child_execution_strategy')
    assert_equal [{ 'action' => 'do_something_with_input' }], input['children']
    assert_equal(
      [
        { 'name' => 'comments', 'gui_name' => 'Comments', 'path' => '/', 'type' => 'string', 'required' => true, 'overwrite' => false },
        { 'name' => 'server_name', 'gui_name' => 'Server name', 'path' => '/database/server', 'type' => 'string', 'required' => true,
          'overwrite' => false, 'description' => 'Name of the server to restart' },
        { 'name' => 'patch_number', 'gui_name' => 'Patch number', 'path' => '/patches', 'type' => 'integer', 'required' => false,
          'overwrite' => false, 'default_value' => 10, 'valid_values' => [1, 10] },
        { 'name' => 'restart_after_hours', 'gui_name' => 'Restart after hours', 'path' => '/', 'type' => 'boolean', 'required' => true,
          'overwrite' => false, 'default_value' => true },
        { 'name' => 'cutover', 'gui_name' => 'Cutover', 'path' => '/', 'type' => 'date', 'required' => false, 'overwrite' => false,
          'valid_values' => ['2026-06-30'] }
      ],
      input['input_arguments']
    )
  end

  def test_input_argument_mistakes_fail_while_actions_rb_loads_naming_the_argument_and_line
    {
      "[:a, { a: {} }]" => /input argument a is declared more than once \(actions.rb:2\)/,
      "[:'a/b']" => %r{input argument a/b: needs a name without / \(actions.rb:2\)},
      "[n: { type: :integer, default_value: 1.5 }]" => /input argument n: default_value 1.5 cannot be a integer \(actions.rb:2\)/,
      "[b: { type: :boolean, valid_values: %w[yes no maybe] }]" => /input argument b: valid_values "maybe" cannot be a boolean/,
      "[h: { type: :hash, valid_values: [{}] }]" => /input argument h: valid_values cannot be given for the hash type/,
      "[s: { valid_values: %w[a b], default_value: 'c' }]" => /input argument s: default_value "c" is not one of its valid_values/,
      "[t: { type: :uuid }]" => /input argument t: type must be one of string, boolean/
    }.each do |arguments, message|
      write('actions.rb', "action :x, steps: [\n  OpsChain.input_step(input_arguments: #{arguments})\n]\n")
      result = action('x')
      refute result.success?, arguments
      assert_match message, result.stderr, arguments
    end
  end

  def test_ignore_failure_step_and_the_step_wrapper
    write_context
    write('actions.rb', <<~RUBY)
      action :destroy, steps: [
        OpsChain.ignore_failure_step('Shutdown'),
        OpsChain.step('Shutdown', ignore_failure: true),
        OpsChain.step('Shutdown', wait: true, ignore_failure: true),
        OpsChain.step('Shutdown', wait: 5, wait_step_name: 'Pause'),
        OpsChain.step('Shutdown', input_arguments: [:reason]),
        OpsChain.step('infra_destroy')
      ]
      action('Shutdown') {}
      action(:infra_destroy) {}
    RUBY
    result = action('destroy')
    assert result.success?, result.stderr
    shutdown = [{ 'action' => 'Shutdown' }]
    assert_equal(
      [
        ['group', 'Run "Shutdown" ignoring failures', true, shutdown],
        ['group', 'Run "Shutdown" ignoring failures 2', true, shutdown],
        ['wait', 'Run "Shutdown" waiting for explicit continue, ignoring failures', true, shutdown],
        ['wait', 'Pause', nil, shutdown],
        ['input', 'Run "Shutdown" waiting for input', nil, shutdown],
        [nil, nil, nil, nil]
      ],
      children.map { |child| child.values_at('type', 'step_name', 'ignore_failure', 'children') }
    )
    assert_equal 5, children[3]['wait_seconds']
    assert_equal 'infra_destroy', children[5]['action']
  end

  def test_step_wrapper_refuses_wait_with_input_and_built_in_steps_outside_steps_lists
    {
      "action :x, steps: [OpsChain.step('y', wait: true, input_arguments: [:a])]" => /wait: and input_arguments: cannot be used together/,
      "action :x, steps: [OpsChain.step('y', retry: 2)]" => /OpsChain.step: unknown option :retry/,
      'action OpsChain.wait_step, steps: [:y]' => /opschain_wait_step_1 is a built-in step .* cannot be an action name/,
      'action x: [OpsChain.wait_step] do end' => /opschain_wait_step_1 is a built-in step .* cannot be a prerequisite/,
      "action :x, steps: [OpsChain.wait_step(seconds: 'soon')]" => /seconds:\) must be a whole number of seconds/
    }.each do |code, message|
      write('actions.rb', "#{code}\n")
      result = action('x')
      refute result.success?, code
      assert_match message, result.stderr, code
    end
  end

  def test_dynamic_child_steps_may_be_built_in_steps_too
    write_context
    write('actions.rb', <<~RUBY)
      action :x do
        OpsChain.append_child_steps(OpsChain.wait_step(step_name: 'Check'), 'y')
      end
      action(:y) {}
    RUBY
    result = action('x')
    assert result.success?, result.stderr
    assert_equal [%w[wait Check], ['y', nil]], children.map { |child| [child['type'] || child['action'], child['step_name']] }
  end

  def test_a_dry_run_runs_nothing_and_writes_the_expected_step_tree
    write_context
    write('actions.rb', <<~RUBY)
      desc 'Deploy in maintenance mode'
      action deploy_in_maintenance_mode: [:check], steps: [
        :enable_maintenance_mode,
        OpsChain.steps(%w[deploy_war deploy_ear], run_as: :parallel),
        OpsChain.wait_step(step_name: 'Smoke test', steps: [:disable_maintenance_mode]),
        'MintModel/Step'
      ] do
        puts 'ran'
      end
      action(:check) { puts 'ran check' }
      action :enable_maintenance_mode, step_name: 'Enable maintenance', steps: -> { [:loop_back] } do puts 'ran' end
      action :loop_back, steps: [:enable_maintenance_mode]
      %i[deploy_war deploy_ear disable_maintenance_mode].each { |name| action(name) { puts 'ran' } }
    RUBY
    result = action('deploy_in_maintenance_mode', env: { 'OPSCHAIN_DRY_RUN' => 'true' })
    assert result.success?, result.stderr
    refute_includes result.stdout, 'ran'
    assert_match(/dry run \(OPSCHAIN_DRY_RUN=true\): deploy_in_maintenance_mode not run/, result.stdout)
    tree = step_result['expected_step_tree']
    assert_equal(
      {
        'action' => 'deploy_in_maintenance_mode', 'description' => 'Deploy in maintenance mode', 'prerequisites' => ['check'],
        'child_execution_strategy' => 'sequential',
        'children' => [
          { 'action' => 'enable_maintenance_mode', 'step_name' => 'Enable maintenance', 'prerequisites' => [], 'child_execution_strategy' => 'sequential',
            'children' => [{ 'action' => 'loop_back', 'prerequisites' => [], 'child_execution_strategy' => 'sequential',
                             'children' => [{ 'action' => 'enable_maintenance_mode', 'step_name' => 'Enable maintenance', 'prerequisites' => [],
                                              'recursive' => true }] }] },
          { 'action' => 'opschain_steps_1', 'type' => 'group', 'step_name' => 'Parallel children', 'child_execution_strategy' => 'parallel',
            'children' => [{ 'action' => 'deploy_war', 'prerequisites' => [], 'children' => [], 'child_execution_strategy' => 'sequential' },
                           { 'action' => 'deploy_ear', 'prerequisites' => [], 'children' => [], 'child_execution_strategy' => 'sequential' }] },
          { 'action' => 'opschain_wait_step_1', 'type' => 'wait', 'step_name' => 'Smoke test', 'child_execution_strategy' => 'sequential',
            'children' => [{ 'action' => 'disable_maintenance_mode', 'prerequisites' => [], 'children' => [], 'child_execution_strategy' => 'sequential' }] },
          { 'action' => 'MintModel/Step', 'defined' => false }
        ]
      },
      tree
    )
    assert_nil action('check').then { step_result['expected_step_tree'] }
  end
end
